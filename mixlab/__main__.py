from mixlab.cli import main

main()
