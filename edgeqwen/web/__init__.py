"""The browser side of an artifact: web/ (page, JavaScript API, pinned onnxruntime-web + transformers.js) written at
build time (bundle.py, from npm through npm.py's cache) and served on loopback by `edgeqwen web` (server.py)."""
