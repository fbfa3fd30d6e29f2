"""Reading and writing files: finding, checking and scanning log parts (`logs`), object-store URLs
(`storage`), and outputs that carry their provenance (`artifacts`)."""
