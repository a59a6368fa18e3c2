"""Views: query parameters (:mod:`.params`) and row iteration (:mod:`.iterator`)."""
