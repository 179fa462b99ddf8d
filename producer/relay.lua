-- batchrelay's atomic steps, one script (as dramatiq's dispatch.lua): ARGV[1] names the command.
-- Every call goes through producer/commands.py: one typed Python function per command builds
-- its KEYS (from producer/keys.py) and ARGV, so this file and that one change together.
--
-- Every key a command touches belongs to one group and carries the group's {hash tag} (or is
-- one provider profile's keys, for reserve and release, or one idempotency key, for idem and
-- unclaim), so the script is valid on a Redis Cluster. Request records are addressed as req_prefix .. id, the
-- prefix being a key of the same group. Redis runs a script alone, so each command is atomic
-- with respect to submit(), cancel() and the other commands; a crash never leaves half of one.
--
-- Request states: pending -> in_batch -> succeeded | failed, and pending -> cancelled.
-- A request is in the pending zset exactly when its state is pending, and in at most one batch,
-- named by its `batch` field (docs/architecture.md, promises 1 and 2).

local cmd = ARGV[1]

local function chunks(list, size)
  local out, n = {}, #list
  for i = 1, n, size do
    local part = {}
    for j = i, math.min(i + size - 1, n) do part[#part + 1] = list[j] end
    out[#out + 1] = part
  end
  return out
end

-- Final states are announced on the group's `done` channel (ARGV[2]), one message per call
-- listing the request ids, so result() can wait without polling and a 500-line chunk costs
-- one SPUBLISH, not 500. Sharded pub/sub (Redis 7): the channel carries the group's tag, so on
-- a cluster the script publishes on its own node and subscribers listen there.
local function final(rk, state, now, retention_ms, fields)
  redis.call('HSET', rk, 'state', state, 'finished', now, unpack(fields))
  redis.call('HDEL', rk, 'body')  -- never read again; only the result is kept
  redis.call('PEXPIRE', rk, retention_ms)
end

-- A group's `alive` key outlives every request record of the group: it is only ever pushed
-- later, never earlier (a producer may run with a shorter retention than the workers).
local function keep_alive(key, now, retention_ms)
  if redis.call('PTTL', key) < tonumber(retention_ms) then
    redis.call('SET', key, now, 'PX', retention_ms)
  end
end

-- claim: move up to max_n pending requests, at most max_bytes of JSONL and max_tokens of
-- estimated tokens (0: no bound; a request's estimate is ceil(bytes / per_token)), into a new
-- batch. Returns {requests, bytes, estimated tokens}.
-- KEYS: pending, pbytes, batch, items, inflight
-- ARGV: 'claim', -, req_prefix, max_n, max_bytes, bid, now_ms, inflight score, per_token,
--       max_tokens, batch field/value pairs...
if cmd == 'claim' then
  local req_prefix, max_n, max_bytes = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
  local bid, now = ARGV[6], ARGV[7]
  local per_token, max_tokens = tonumber(ARGV[9]), tonumber(ARGV[10])
  local ids = redis.call('ZRANGE', KEYS[1], 0, max_n - 1)
  local chosen, orphans, total, tokens = {}, {}, 0, 0
  for _, rid in ipairs(ids) do
    local size = tonumber(redis.call('HGET', req_prefix .. rid, 'bytes'))
    if size == nil then
      orphans[#orphans + 1] = rid
    else
      local estimate = math.ceil(size / per_token)
      if #chosen > 0 and total + size > max_bytes then break end
      if max_tokens > 0 and tokens + estimate > max_tokens then break end
      chosen[#chosen + 1] = rid
      total = total + size
      tokens = tokens + estimate
    end
  end
  for _, part in ipairs(chunks(orphans, 1000)) do redis.call('ZREM', KEYS[1], unpack(part)) end
  if #chosen == 0 then return {0, 0, 0} end
  for _, part in ipairs(chunks(chosen, 1000)) do
    redis.call('ZREM', KEYS[1], unpack(part))
    redis.call('RPUSH', KEYS[4], unpack(part))
  end
  for _, rid in ipairs(chosen) do
    redis.call('HSET', req_prefix .. rid, 'state', 'in_batch', 'batch', bid)
  end
  redis.call('DECRBY', KEYS[2], total)
  local fields = {}
  for i = 11, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[3], 'n', #chosen, 'bytes', total, 'tokens', tokens, 'claimed', now,
    unpack(fields))
  redis.call('ZADD', KEYS[5], ARGV[8], bid)
  return {#chosen, total, tokens}
end

-- settle: apply provider outcomes of one batch to its requests. A line for a request that is
-- not (any more) in this batch is stale and ignored, so collecting twice is harmless.
-- A final request of a tenant is also put on the group's `bill`, whose cost the worker then
-- counts in the tenant's keys (another hash slot, so another call: see `spend`).
-- KEYS: pending, pbytes, deliver, alive, bill
-- ARGV: 'settle', done_channel, req_prefix, bid, now_ms, retention_ms, max_attempts,
--       provider_batch_id, profile that served the batch (a fallback, maybe), then 4 values per
--       request: rid, outcome, status_code, payload
--   outcome ok      -> succeeded, payload = response body JSON
--   outcome fail    -> failed, payload = error JSON
--   outcome retry   -> back to pending with attempt + 1 (failed once attempts run out)
--   outcome requeue -> back to pending, attempt unchanged (the batch, not the request, failed)
if cmd == 'settle' then
  local req_prefix, bid, now = ARGV[3], ARGV[4], ARGV[5]
  local retention_ms, max_attempts, pbatch = ARGV[6], tonumber(ARGV[7]), ARGV[8]
  local served_by = ARGV[9]
  local counts = {ok = 0, fail = 0, retry = 0, requeue = 0, stale = 0}
  local finished = {}
  for i = 10, #ARGV, 4 do
    local rid, outcome, status, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local rk = req_prefix .. rid
    local cur = redis.call('HMGET', rk, 'state', 'batch', 'attempt', 'callback', 'tenant')
    if cur[1] ~= 'in_batch' or cur[2] ~= bid then
      counts.stale = counts.stale + 1
    else
      local attempt = tonumber(cur[3]) or 0
      if outcome == 'retry' and attempt + 1 >= max_attempts then
        outcome = 'fail'
      end
      if outcome == 'ok' or outcome == 'fail' then
        local fields = {'status_code', status, 'pbatch', pbatch, 'attempt', attempt + 1,
          'served_by', served_by}
        if outcome == 'ok' then
          fields[#fields + 1] = 'result'
        else
          fields[#fields + 1] = 'error'
        end
        fields[#fields + 1] = payload
        if cur[4] and cur[4] ~= '' then
          fields[#fields + 1] = 'dstate'
          fields[#fields + 1] = 'pending'
          redis.call('ZADD', KEYS[3], now, rid)
        end
        final(rk, outcome == 'ok' and 'succeeded' or 'failed', now, retention_ms, fields)
        if cur[5] and cur[5] ~= '' then redis.call('ZADD', KEYS[5], now, rid) end
        finished[#finished + 1] = rid
      else
        local next_attempt = attempt
        if outcome == 'retry' then next_attempt = attempt + 1 end
        local size = redis.call('HMGET', rk, 'bytes', 'created')
        redis.call('HSET', rk, 'state', 'pending', 'batch', '', 'attempt', next_attempt,
          'last_error', payload)
        redis.call('ZADD', KEYS[1], size[2], rid)
        redis.call('INCRBY', KEYS[2], size[1])
      end
      counts[outcome] = counts[outcome] + 1
    end
  end
  if #finished > 0 then
    keep_alive(KEYS[4], now, retention_ms)
    redis.call('SPUBLISH', ARGV[2], table.concat(finished, ' '))
  end
  return {counts.ok, counts.fail, counts.retry, counts.requeue, counts.stale}
end

-- Give back what `bid` holds in a profile's tokens hash; the hash goes once nothing is held,
-- so a model used once does not leave a `total` of 0 behind forever.
local function give_back_tokens(key, bid)
  local held = redis.call('HGET', key, bid)
  if not held then return false end
  redis.call('HDEL', key, bid)
  if redis.call('HINCRBY', key, 'total', -tonumber(held)) == 0 and redis.call('HLEN', key) == 1 then
    redis.call('DEL', key)
  end
  return true
end

-- reserve: hold a batch-in-flight slot and enqueued tokens at one provider profile for one
-- batch, or hold nothing there. Repeating it for the same batch updates its tokens (a new
-- estimate); a refusal drops what the batch held, so a refused batch never keeps a share.
-- Tokens fit when the profile's reservations for the model stay within the budget, or when
-- nothing else is reserved (a batch larger than the whole budget must not wait forever).
-- Both keys carry the profile's {hash tag}, so this is one slot on a Redis Cluster.
-- KEYS: live (hash bid -> model), tokens (hash bid -> tokens, plus 'total')
-- ARGV: 'reserve', -, bid, model, tokens, max_live (0: no cap), budget (0: none), force (1/0)
-- Returns 1 when held, 0 when there is no room.
if cmd == 'reserve' then
  local bid, model, tokens = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local max_live, budget, force = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] == '1'
  local held = tonumber(redis.call('HGET', KEYS[2], bid) or '0')
  local live = redis.call('HEXISTS', KEYS[1], bid) == 1
  local others = tonumber(redis.call('HGET', KEYS[2], 'total') or '0') - held
  local slot_ok = live or max_live == 0 or redis.call('HLEN', KEYS[1]) < max_live
  local tokens_ok = budget == 0 or others + tokens <= budget or others == 0
  if not (force or (slot_ok and tokens_ok)) then
    redis.call('HDEL', KEYS[1], bid)
    give_back_tokens(KEYS[2], bid)
    return 0
  end
  redis.call('HSET', KEYS[1], bid, model)
  redis.call('HSET', KEYS[2], bid, tokens)
  redis.call('HINCRBY', KEYS[2], 'total', tokens - held)
  return 1
end

-- release: give back a batch's slot and tokens at a profile; repeating it changes nothing.
-- KEYS: live, tokens (as for reserve)
-- ARGV: 'release', -, bid
if cmd == 'release' then
  redis.call('HDEL', KEYS[1], ARGV[3])
  return give_back_tokens(KEYS[2], ARGV[3]) and 1 or 0
end

-- intake: store requests of one group, each (record, pending entry, byte count) unless its
-- record exists already: a reused idempotency key, or a submit repeated after a crash. One
-- call per group per chunk, so intake costs one round trip and no per-request script call.
-- It also marks the group registered; {stored, 1} tells the producer that the mark was
-- missing (a new group, or one `retire` just removed), so it must list the group again.
-- KEYS: pending, pbytes, registered
-- ARGV: 'intake', -, req_prefix, created_ms, then 7 values per request:
--       rid, bytes, body, callback, metadata, idempotency key, tenant ('' when absent)
if cmd == 'intake' then
  local req_prefix, created = ARGV[3], ARGV[4]
  local stored, total = 0, 0
  local optional = {'callback', 'metadata', 'idem', 'tenant'}
  for i = 5, #ARGV, 7 do
    local rid = ARGV[i]
    local rk = req_prefix .. rid
    if redis.call('EXISTS', rk) == 0 then
      local f = {'state', 'pending', 'body', ARGV[i + 2], 'bytes', ARGV[i + 1], 'created', created}
      for n, name in ipairs(optional) do
        if ARGV[i + 2 + n] ~= '' then
          f[#f + 1] = name
          f[#f + 1] = ARGV[i + 2 + n]
        end
      end
      redis.call('HSET', rk, unpack(f))
      redis.call('ZADD', KEYS[1], created, rid)
      total = total + tonumber(ARGV[i + 1])
      stored = stored + 1
    end
  end
  if total > 0 then redis.call('INCRBY', KEYS[2], total) end
  local fresh = redis.call('SET', KEYS[3], '1', 'NX') and 1 or 0
  return {stored, fresh}
end

-- admit: count requests of one tenant against its quotas, or count none of them. Called
-- before `intake` (the tenant's keys are in another hash slot); a request already counted
-- (a pipeline sent again) is not counted twice. Entries of `open` older than stale_before_ms
-- are dropped first: they bound what a submit that died between the two calls leaves behind.
-- KEYS: open (zset rid -> created), day (hash requests, usd_micro)
-- ARGV: 'admit', -, now_ms, stale_before_ms, max_pending, max_requests_per_day,
--       max_usd_micro_per_day (0: no limit), day_ttl_s, then 2 values per request:
--       rid, estimated usd_micro
-- Returns 'ok', or the name of the quota that refused them.
if cmd == 'admit' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[4])
  local fresh, usd = {}, 0
  for i = 9, #ARGV, 2 do
    if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
      fresh[#fresh + 1] = ARGV[i]
      usd = usd + tonumber(ARGV[i + 1])
    end
  end
  if #fresh == 0 then return 'ok' end
  local max_pending, max_req, max_usd = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  if max_pending > 0 and redis.call('ZCARD', KEYS[1]) + #fresh > max_pending then
    return 'max_pending'
  end
  local day = redis.call('HMGET', KEYS[2], 'requests', 'usd_micro')
  if max_req > 0 and (tonumber(day[1]) or 0) + #fresh > max_req then return 'requests_per_day' end
  if max_usd > 0 and (tonumber(day[2]) or 0) + usd > max_usd then return 'usd_per_day' end
  for _, part in ipairs(chunks(fresh, 1000)) do
    local args = {}
    for _, rid in ipairs(part) do
      args[#args + 1] = ARGV[3]
      args[#args + 1] = rid
    end
    redis.call('ZADD', KEYS[1], unpack(args))
  end
  redis.call('HINCRBY', KEYS[2], 'requests', #fresh)
  redis.call('HINCRBY', KEYS[2], 'usd_micro', usd)
  redis.call('EXPIRE', KEYS[2], ARGV[8])
  return 'ok'
end

-- spend: a tenant's requests are final: take each off `open` and, the first time only (so a
-- bill drained twice counts once), add its usage and cost to the day's totals per model.
-- KEYS: open, costs (hash "<model>|<measure>" -> total)
-- ARGV: 'spend', -, costs_ttl_s, then 6 values per request: rid, model ('' for a request
--       with nothing to count: cancelled), input_tokens, output_tokens, batch_usd_micro,
--       sync_usd_micro
-- Returns how many requests were counted.
if cmd == 'spend' then
  local counted = 0
  local measures = {'input_tokens', 'output_tokens', 'batch_usd_micro', 'sync_usd_micro'}
  for i = 4, #ARGV, 6 do
    if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 and ARGV[i + 1] ~= '' then
      local model = ARGV[i + 1] .. '|'
      redis.call('HINCRBY', KEYS[2], model .. 'requests', 1)
      for n, name in ipairs(measures) do
        redis.call('HINCRBY', KEYS[2], model .. name, ARGV[i + 1 + n])
      end
      counted = counted + 1
    end
  end
  if counted > 0 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
  return counted
end

-- idem: take an idempotency key for a new request, or say who holds it. The key's value is
-- "rid fingerprint", the fingerprint covering endpoint, body, callback and metadata, so the
-- same key with any other field is a conflict, decided in one atomic step (the key is in no
-- group's hash slot, so it cannot share a call with `intake`). A repeat by the holder (a
-- pipeline sent again after NOSCRIPT) counts as taken.
-- KEYS: idempotency key
-- ARGV: 'idem', -, rid, fingerprint, ttl_s
-- Returns {holder rid, 1 if this rid holds it, 1 if the holder's fingerprint differs}.
if cmd == 'idem' then
  local cur = redis.call('GET', KEYS[1])
  if not cur then
    redis.call('SET', KEYS[1], ARGV[3] .. ' ' .. ARGV[4], 'EX', ARGV[5])
    return {ARGV[3], 1, 0}
  end
  local sep = string.find(cur, ' ', 1, true)
  local owner, fingerprint = string.sub(cur, 1, sep - 1), string.sub(cur, sep + 1)
  if owner == ARGV[3] then return {owner, 1, 0} end
  return {owner, 0, fingerprint ~= ARGV[4] and 1 or 0}
end

-- unclaim: give back an idempotency key a failed submit took, if it still holds that value.
-- KEYS: idempotency key
-- ARGV: 'unclaim', -, value
if cmd == 'unclaim' then
  if redis.call('GET', KEYS[1]) == ARGV[3] then return redis.call('DEL', KEYS[1]) end
  return 0
end

-- cancel: make a request final as `cancelled` while its batch has not been submitted: it is
-- pending, or in a batch that is claimed or uploaded and whose create has not started. The
-- submitter leaves out requests no longer in the batch (an emptied batch is finished without
-- a create); one cancelled after its line was uploaded goes to the provider, but its result
-- is stale when collected and never delivered. Returns 'ok', else the state that prevents it.
-- KEYS: pending, pbytes, request record, alive
-- ARGV: 'cancel', done_channel, rid, now_ms, retention_ms, batch key prefix
if cmd == 'cancel' then
  local rid, now, retention_ms = ARGV[3], ARGV[4], ARGV[5]
  local cancellable = false
  if redis.call('ZREM', KEYS[1], rid) == 1 then
    redis.call('DECRBY', KEYS[2], redis.call('HGET', KEYS[3], 'bytes') or 0)
    cancellable = true
  else
    local cur = redis.call('HMGET', KEYS[3], 'state', 'batch')
    if cur[1] == 'in_batch' and cur[2] then
      local b = redis.call('HMGET', ARGV[6] .. cur[2], 'state', 'create_started')
      local unsent = b[1] == 'claimed' or b[1] == 'uploaded'
      cancellable = unsent and (not b[2] or b[2] == '')
    end
  end
  if cancellable then
    final(KEYS[3], 'cancelled', now, retention_ms, {})
    keep_alive(KEYS[4], now, retention_ms)
    redis.call('SPUBLISH', ARGV[2], rid)
    return 'ok'
  end
  return redis.call('HGET', KEYS[3], 'state') or ''
end

-- lease: take up to `limit` members of a schedule zset that are due, and push each one's score
-- to now + lease_ms, so the next tick does not hand it out again while it is being handled;
-- if the handler dies, the member is due again when the lease runs out.
-- KEYS: schedule zset
-- ARGV: 'lease', -, now_ms, lease_ms, limit
if cmd == 'lease' then
  local now, lease_ms, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', now + lease_ms, member) end
  return due
end

-- retire: forget a group that has nothing left: no pending request, live batch, due
-- delivery or dead letter, and no request record (`alive` is refreshed whenever a request
-- of the group becomes final and expires with the records). The worker has already taken
-- the group off the groups list; it puts it back when this answers 0. Intake marks the
-- group registered again, so a request that arrives after this call is never orphaned:
-- its producer lists the group again (see intake).
-- KEYS: pending, inflight, deliver, dead, alive, registered, pbytes
-- ARGV: 'retire'
if cmd == 'retire' then
  for i = 1, 4 do
    if redis.call('ZCARD', KEYS[i]) > 0 then return 0 end
  end
  if redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
  redis.call('DEL', KEYS[6], KEYS[7])
  return 1
end

-- take_wave: start handling a wave of one group's leased deliveries in one call, each fenced
-- by its lease: a chunk that waited in the queue past its lease was handed out again by a later
-- tick (`lease` moved its score), so the stale holder skips it instead of sending it twice.
-- Per member: 0 = stale (its score is no longer this holder's lease), 1 = skipped (record
-- gone, already delivered or dead, or no callback: it leaves the schedule), or
-- {2, values of the named fields} = taken and held until hold_until.
-- KEYS: deliver zset, then each member's request record
-- ARGV: 'take_wave', -, leased_until_ms, hold_until_ms, n_fields, field names..., members...
if cmd == 'take_wave' then
  local leased, hold = tonumber(ARGV[3]), tonumber(ARGV[4])
  local n_fields = tonumber(ARGV[5])
  local fields = {}
  for i = 1, n_fields do fields[i] = ARGV[5 + i] end
  local first = 6 + n_fields
  local out = {}
  for i = 2, #KEYS do
    local member = ARGV[first + i - 2]
    local score = redis.call('ZSCORE', KEYS[1], member)
    if not score or tonumber(score) ~= leased then
      out[#out + 1] = 0
    else
      local head = redis.call('HMGET', KEYS[i], 'state', 'dstate', 'callback')
      if not head[1] or head[2] ~= 'pending' or not head[3] or head[3] == '' then
        redis.call('ZREM', KEYS[1], member)
        out[#out + 1] = 1
      else
        redis.call('ZADD', KEYS[1], 'XX', hold, member)
        local values = redis.call('HMGET', KEYS[i], unpack(fields))
        table.insert(values, 1, 2)
        out[#out + 1] = values
      end
    end
  end
  return out
end

-- settle_deliveries: write the outcomes of a wave of one group's delivery attempts.
-- `delivered` and `dead` leave the schedule (dead ones join the dead letters at now);
-- `retry` is due again at due_ms. A record that expired meanwhile only leaves the schedule.
-- KEYS: deliver zset, dead zset, then each member's request record
-- ARGV: 'settle_deliveries', -, now_ms, then per member: member, outcome, attempts, due_ms,
--       error text
-- Returns how many records were written.
if cmd == 'settle_deliveries' then
  local now = tonumber(ARGV[3])
  local written = 0
  for i = 3, #KEYS do
    local at = 4 + (i - 3) * 5
    local member, outcome, attempts = ARGV[at], ARGV[at + 1], ARGV[at + 2]
    local due, err = tonumber(ARGV[at + 3]), ARGV[at + 4]
    if redis.call('EXISTS', KEYS[i]) == 0 then
      redis.call('ZREM', KEYS[1], member)
    elseif outcome == 'delivered' then
      redis.call('HSET', KEYS[i], 'dstate', 'delivered', 'dattempts', attempts, 'delivered', now)
      redis.call('ZREM', KEYS[1], member)
      written = written + 1
    elseif outcome == 'dead' then
      redis.call('HSET', KEYS[i], 'dstate', 'dead', 'dattempts', attempts, 'dlast', err)
      redis.call('ZREM', KEYS[1], member)
      redis.call('ZADD', KEYS[2], now, member)
      written = written + 1
    elseif outcome == 'retry' then
      redis.call('HSET', KEYS[i], 'dattempts', attempts, 'dlast', err)
      redis.call('ZADD', KEYS[1], due, member)
      written = written + 1
    else
      return redis.error_reply('batchrelay script: settle_deliveries outcome ' .. tostring(outcome))
    end
  end
  return written
end

return redis.error_reply('batchrelay script: unknown command ' .. tostring(cmd))
