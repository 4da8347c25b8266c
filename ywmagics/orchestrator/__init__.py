"""The orchestrator: one local server per user that installs, starts, supervises and routes to
backends. It imports neither IPython nor the kernel side nor the client."""
