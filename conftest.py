pytest_plugins = ["devtools.testing.plugin"]
