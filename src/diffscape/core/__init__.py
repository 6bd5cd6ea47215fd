"""Plumbing every other folder uses: errors, names on disk and the rule for --out, atomic
writes, folder locks, durations, statistics over seeds."""
