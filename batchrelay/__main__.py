from batchrelay.cli import main

main()
