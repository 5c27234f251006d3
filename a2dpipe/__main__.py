from a2dpipe.cli import main

raise SystemExit(main())
