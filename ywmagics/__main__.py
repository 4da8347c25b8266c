from ywmagics.cli import main

raise SystemExit(main())
