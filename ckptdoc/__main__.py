from ckptdoc.cli import main

main()
