from meterproxy.cli.main import main

main()
