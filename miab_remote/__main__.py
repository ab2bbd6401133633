from miab_remote.launch import main

raise SystemExit(main())
