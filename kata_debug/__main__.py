from kata_debug.cli.app import main

main()
