from mfdeploy.cli import main

main()
