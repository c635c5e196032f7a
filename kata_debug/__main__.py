from kata_debug.cli.entry import main

main()
