"""`posedge`: the command line, one module per verb group (`main` parses and dispatches).

`posedge.agent.cli:main` is the console script's entry point (pyproject.toml) and stays importable here.
"""

from posedge.agent.cli.main import main

__all__ = ["main"]
