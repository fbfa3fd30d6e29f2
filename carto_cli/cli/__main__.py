from carto_cli.cli import main

main()
