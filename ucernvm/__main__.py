from ucernvm.cli import main

raise SystemExit(main())
