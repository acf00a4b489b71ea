from corem_ingress.cli import main

raise SystemExit(main())
