"""Before a long GPU run: checks that start nothing, the projected wall-clock and disk, and the command joining them."""
