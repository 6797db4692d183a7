"""usaid-plot-log: the curves read from BasicSR's text log equal TensorBoard's, and the figure is written."""
import cv2
import pytest

from tests.conftest import console_script, run, tiny_options, write_options
from usaid.tools.plot_log import main, read_log, read_run


def test_log_and_tensorboard_give_the_same_curves_and_one_figure_overlays_runs(image_folder, tmp_path, capsys,
                                                                               tiny_run):
    usa_run = tiny_run[0]  # the shared run of tiny_options with the USA loss (conftest); here one without it
    opt = tiny_options(image_folder, name='b', usa=False)
    run([console_script('usaid-train'), '-opt', str(write_options(opt, tmp_path / 'b.yml'))], cwd=tmp_path)
    from_log = read_run(str(usa_run / 'experiments' / 'e2e'))
    from_tb = read_run(str(usa_run / 'tb_logger' / 'e2e'))
    assert set(from_log['losses']) == set(from_tb['losses']) == {'l_pix', 'l_usa', 'l_total', 'lr'}
    for term in from_log['losses']:
        assert [i for i, _ in from_log['losses'][term]] == [i for i, _ in from_tb['losses'][term]] == [1, 2, 3, 4]
        assert [v for _, v in from_log['losses'][term]] == pytest.approx([v for _, v in from_tb['losses'][term]],
                                                                          rel=1e-4)  # the log prints 5 digits
    psnr_log, psnr_tb = from_log['metrics']['tiny_val/psnr'], from_tb['metrics']['tiny_val/psnr']
    assert [v for _, v in psnr_log] == pytest.approx([v for _, v in psnr_tb], abs=1e-4)
    # the text log has no iteration for a validation: the last printed one, exact except for the final validation
    assert [i for i, _ in psnr_log] == [2, 4, 4] and [i for i, _ in psnr_tb] == [2, 4, 5]

    main([str(usa_run / 'experiments' / 'e2e'), str(tmp_path / 'tb_logger' / 'b'), '--names', 'usa', 'mse', '-o',
          str(tmp_path / 'curves.png')])
    assert cv2.imread(str(tmp_path / 'curves.png')).shape == (450, 1200, 3)
    out = capsys.readouterr().out
    assert out.startswith('usa: 4 loss points, last validation') and '\nmse: 4 loss points' in out


def test_a_run_that_is_not_a_log_is_named(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SystemExit, match='empty: neither a BasicSR training log'):
        main([str(tmp_path / 'empty')])
    (tmp_path / 'notes.log').write_text('nothing here\n')
    assert read_log(str(tmp_path / 'notes.log')) == {'losses': {}, 'metrics': {}}
