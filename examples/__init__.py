"""Example web apps (FastAPI, Flask, Django) using batchrelay, and a request file for the demo."""
