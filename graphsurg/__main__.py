from graphsurg.cli import main

main()
