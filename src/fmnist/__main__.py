from fmnist.cli import entry_point

entry_point()
