from rlft.collect import main

main()
