__impl__ = "pure"
