pytest_plugins = ["common.testing.plugin"]
