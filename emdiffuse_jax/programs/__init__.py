"""The command-line programs, one absl program per module: ``main(argv)`` plus ``run()`` that starts it.

Each is reached two ways with the same flags: ``emdiffuse NAME`` (the installed console command,
emdiffuse_jax/command.py) and ``python launch/NAME.py`` (a thin script for a source checkout). A new
program goes here, gets a two-line script in launch/, and is listed by ``emdiffuse --help`` automatically.
"""
