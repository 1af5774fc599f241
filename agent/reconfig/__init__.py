"""Config pushed by HQ (signed documents) and the file reloaded on SIGHUP, applied live."""
