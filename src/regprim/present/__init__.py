"""What a person looks at: PNG figures (``figures``), the offline ``report.html`` (``report``), the
dataset report (``dataset_report``); HTML templates and the grid script in ``templates/`` and
``static/``.
"""
