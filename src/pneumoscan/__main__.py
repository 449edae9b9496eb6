from pneumoscan.cli import main

main()
