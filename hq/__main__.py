from posedge.hq.cli import main

raise SystemExit(main())
