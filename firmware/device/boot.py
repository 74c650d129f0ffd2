# Runs first at every start. Kept tiny on purpose: a mistake here could lock the board out
# of its REPL. The agent itself starts from main.py.
import gc

gc.collect()
