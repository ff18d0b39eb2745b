"""gpts-report: plots and a Markdown summary of GP-TS (and baseline) pre-training runs.

    gpts-report SAVE_DIR [SAVE_DIR ...] --out REPORT_DIR
    python -m gpts_fairseq.report SAVE_DIR ... --out REPORT_DIR

Inputs and formats are described in :mod:`gpts_fairseq.report.history`.
"""
