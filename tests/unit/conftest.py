from tests._receiver import webhook_receiver  # noqa: F401
