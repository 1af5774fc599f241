from posedge.agent.cli import main

raise SystemExit(main())
