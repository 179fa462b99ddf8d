"""The `batchrelay` command line (the library a web app imports is `producer`)."""
