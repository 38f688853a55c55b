"""The local run viewer: `python -m viewer [ROOT]` serves run folders to a browser on this machine, offline
(viewer/server.py); what its pages show comes from the analysis loaders (viewer/data.py)."""
