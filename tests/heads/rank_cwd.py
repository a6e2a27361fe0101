"""A torchrun entry point for tests: rank r runs ``heads`` from the folder ``RANK_CWD_<r>``, so
that one relative store path names a different store on each rank, as a store that changed
between the ranks opening it would look."""

import os
import runpy

os.chdir(os.environ[f"RANK_CWD_{os.environ['RANK']}"])
runpy.run_module("vidfeat_cli.heads", run_name="__main__", alter_sys=True)
