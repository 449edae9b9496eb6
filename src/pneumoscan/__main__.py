from pneumoscan.cli import app

app(prog_name="pneumoscan")
