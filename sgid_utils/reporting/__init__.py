"""What a run shows: statistics, set metrics, the tables' columns and cells, figures, the HTML page, the exported
image folder and their templates."""
