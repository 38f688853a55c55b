"""From command line to objects: composing the config, typo messages, run folders, settings checks, building."""
