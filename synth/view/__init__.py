"""`synth view`: a run read in the browser (data.py pages the shards, requests.py reads the cache
behind a row, server.py serves the page in static/ and its JSON API)."""
