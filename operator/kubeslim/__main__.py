from kubeslim.cli import main

raise SystemExit(main())
