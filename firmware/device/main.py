# Starts the linkseal agent (app.py). Ctrl-C at the REPL stops it; the watchdog, when the
# board has one, resets the board if the agent ever stops feeding it.
import app

app.main()
