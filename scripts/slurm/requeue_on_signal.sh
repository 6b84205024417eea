#!/usr/bin/env bash
# Run a training command inside a SLURM batch job and requeue the job when SLURM warns that it will end.
#   scripts/slurm/requeue_on_signal.sh COMMAND [ARGS...]
# SLURM sends USR1 to this shell (#SBATCH --signal=B:USR1@SECONDS). The run is asked to stop with SIGTERM
# (train_c2i.py checkpoints at the next step and exits with code 75): COMMAND itself gets it when it is
# torchrun (which forwards it to its workers); when COMMAND is srun, every process of the job's steps gets
# it from scancel instead, since srun answers SIGTERM by killing its tasks. Once COMMAND has ended the job
# is requeued: it starts again with the same script, and --resume continues from that checkpoint.
# SIGTERM to this shell (scancel, the time limit) is passed on the same way, without a requeue.
set -u
first=$1
"$@" &
child=$!
requeue=0
stop() {
    if [ "$first" = srun ]; then scancel --signal=TERM "${SLURM_JOB_ID}"; else kill -TERM "$child" 2>/dev/null; fi
}
trap 'requeue=1; stop' USR1
trap 'stop' TERM
while kill -0 "$child" 2>/dev/null; do
    wait "$child"  # returns early when a trapped signal arrives: wait until COMMAND has really ended
done
wait "$child"
status=$?
if [ "$requeue" = 1 ]; then
    echo "requeue_on_signal.sh: COMMAND ended with code $status after the warning signal; requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "${SLURM_JOB_ID}"
fi
exit "$status"
