from meterproxy.cli import main

main()
