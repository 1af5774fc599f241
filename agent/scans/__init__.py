"""The scan pipeline: what every scanner's scans go through (duplicates, classification, GS1, resolvers), and
`posedge scan-test`, which finds the scanner and settings that read the printed test code."""
