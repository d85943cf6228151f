"""python -m gateway is the sms-gateway command."""

from .cli import main

main()
