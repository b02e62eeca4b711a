from adapterctl.cli.main import main

main()
