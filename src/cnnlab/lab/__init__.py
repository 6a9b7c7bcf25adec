"""The course's formulas and demos: conv arithmetic, image filters, weight initialisation compared."""
