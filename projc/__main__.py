from projc.cli import main

main()
