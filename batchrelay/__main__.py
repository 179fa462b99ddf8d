from batchrelay.entry import main

main()
